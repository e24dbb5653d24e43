"""`edgellm serve` config: a full file parses to exact values; mistakes get clear messages."""

import argparse

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.services.config import load_config, parse_config
from edgellm.services.serve import add_serve_arguments, run_serve

FULL = """
[model]
n_ctx = 1024
threads = 2

[engine]
queue_size = 3
parallel = 2
max_tokens = 64
default_max_tokens = 16
deadline_s = 20
system_prompt = "You are a kiosk."
node = "pi-1"

[mqtt]
host = "127.0.0.1"
port = 1884
protocol = "3.1.1"
username = "dev"
password_file = "{pw}"
shared_group = "boards"
home_assistant = true

[[serial]]
port = "/dev/ttyUSB0"
mode = "cobs"
flow_control = "rtscts"

[[serial]]
port = "/dev/ttyACM0"
baud = 9600

[socket]
path = "/tmp/x.sock"
mode = "0640"
tcp_port = 7000

[http]
port = 8081
bearer_token = "s3cret"

[log]
level = "debug"
"""


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_config_parses_to_exact_values(tmp_path):
    pw = write(tmp_path, "hunter2\n", "pw")
    cfg = load_config(write(tmp_path, FULL.replace("{pw}", str(pw))))
    assert (cfg.model.n_ctx, cfg.model.threads, cfg.model.path) == (1024, 2, None)
    e = cfg.engine
    assert (e.queue_size, e.parallel, e.max_tokens, e.default_max_tokens, e.deadline_s,
            e.node) == (3, 2, 64, 16, 20.0, "pi-1")
    m = cfg.mqtt
    assert (m.port, m.protocol, m.username, m.password, m.shared_group) == \
        (1884, "3.1.1", "dev", "hunter2", "boards")
    assert (m.request_topic, m.availability_topic, m.status_topic, m.default_reply_topic,
            m.client_id) == ("edgellm/request", "edgellm/pi-1/availability",
                             "edgellm/pi-1/status", "edgellm/reply", "edgellm-pi-1")
    assert [(s.port, s.baud, s.mode, s.flow_control) for s in cfg.serial] == [
        ("/dev/ttyUSB0", 115200, "cobs", "rtscts"), ("/dev/ttyACM0", 9600, "text", "none")]
    assert (cfg.socket.mode, cfg.socket.tcp_port) == (0o640, 7000)
    assert (cfg.http.host, cfg.http.port, cfg.http.bearer_token) == ("127.0.0.1", 8081,
                                                                     "s3cret")
    assert cfg.log.level == "debug"
    assert cfg.adapters() == ["mqtt", "serial:/dev/ttyUSB0", "serial:/dev/ttyACM0", "socket",
                              "http"]


def test_single_serial_table_and_absent_adapters():
    cfg = parse_config({"serial": {"port": "/dev/ttyS0"}})
    assert [s.port for s in cfg.serial] == ["/dev/ttyS0"]
    assert cfg.mqtt is None and cfg.socket is None and cfg.http is None
    assert cfg.engine.queue_size == 8 and cfg.engine.node
    assert cfg.engine.parallel == 0  # the plan chooses


@pytest.mark.parametrize("parallel", [0, 1, 16])
def test_parallel_slots_take_0_for_the_plan_or_1_to_16(parallel):
    cfg = parse_config({"http": {}, "engine": {"parallel": parallel}})
    assert cfg.engine.parallel == parallel


@pytest.mark.parametrize("data, message", [
    ({"htpp": {}}, "unknown key 'htpp' at the top level; did you mean 'http'?"),
    ({"http": {"prot": 1}}, "unknown key 'prot' in [http]; did you mean 'port'?"),
    ({"http": {"port": "80"}}, "http.port must be an integer, got '80'"),
    ({"http": {"port": 70000}}, "http.port must be between 0 and 65535, got 70000"),
    ({"http": {"enabled": 1}}, "http.enabled must be true or false, got 1"),
    ({"mqtt": {"protocol": "4"}}, "mqtt.protocol must be one of '5', '3.1.1', got '4'"),
    ({"mqtt": {"request_topic": "a/#"}}, "mqtt.request_topic must be a topic without"),
    ({"mqtt": {"shared_group": "a/b"}}, "mqtt.shared_group must be a name without"),
    ({"mqtt": {"password": "x"}}, "mqtt.password needs mqtt.username"),
    ({"mqtt": {"tls": {"ca_file": "/nonexistent/ca.pem"}}}, "mqtt.tls.ca_file"),
    ({"serial": {"baud": 9600}}, "[serial] needs 'port'"),
    ({"serial": [{"port": "/dev/a"}, {"port": "/dev/a"}]}, "listed twice"),
    ({"serial": {"port": "/dev/a", "mode": "binary"}}, "serial.mode must be one of"),
    ({"socket": {"mode": "rw"}}, "socket.mode must be an octal mode"),
    ({"socket": {"path": ""}}, "[socket] needs a path or a tcp_port"),
    ({"http": {}, "engine": {"default_max_tokens": 600}}, "default_max_tokens (600) is above"),
    ({"http": {}, "engine": "fast"}, "[engine] must be a table"),
    ({"http": {}, "engine": {"parallel": 17}}, "engine.parallel must be between 0 and 16, got 17"),
    ({"http": {}, "engine": {"parallel": -1}}, "engine.parallel must be between 0 and 16, got -1"),
    ({"http": {}, "engine": {"parallel": 2.5}}, "engine.parallel must be an integer, got 2.5"),
    ({}, "no adapter is enabled"),
    ({"http": {"enabled": False}}, "no adapter is enabled"),
    ({"http": {"bearer_token_file": "/nonexistent"}}, "cannot be read"),
])
def test_mistakes_are_named_with_what_is_allowed(data, message):
    with pytest.raises(EdgeLLMError) as info:
        parse_config(data, "cfg.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("cfg.toml: ")


def test_unreadable_files_get_clear_errors(tmp_path):
    with pytest.raises(EdgeLLMError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(EdgeLLMError, match="not valid TOML"):
        load_config(write(tmp_path, "[http\nport = 1"))


def run(argv):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


def test_serve_check_validates_without_loading_a_model(tmp_path, capsys):
    good = write(tmp_path, '[http]\nport = 8099\n[socket]\npath = "/tmp/a.sock"\n')
    assert run(["--config", str(good), "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: OK (socket, http)"
    bad = write(tmp_path, "[http]\nport = -1\n", "bad.toml")
    assert run(["--config", str(bad), "--check"]) == 2
    assert "http.port must be between 0 and 65535, got -1" in capsys.readouterr().err
