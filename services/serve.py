"""`edgellm serve --config FILE`: one model, one request engine, the configured adapters.

Lifecycle, as systemd sees it (Type=notify, see services/systemd_notify.py):

1. the config is read and validated (errors: a message and exit status 2);
2. the model is loaded (EXTEND_TIMEOUT while it loads), the engine started, then every
   adapter starts listening; only then READY=1. An MQTT broker that is down does not hold
   this up: MQTT keeps reconnecting while the rest serves, and HTTP /health, the MQTT
   status topic and the STATUS= line say what is down;
3. WATCHDOG=1 is sent only while the engine is healthy (idle, or producing tokens);
4. SIGHUP re-reads the config: engine limits and the system prompt change in place, adapters
   whose tables changed restart; a changed [model] is reported as needing a restart. A bad
   new config is logged and the running one kept;
5. SIGTERM/SIGINT: STOPPING=1, adapters stop taking requests, queued and running requests
   get a "shutting_down" error reply, MQTT publishes offline, and the process exits 0
   within SHUTDOWN_BUDGET_S seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time

from edgellm.devices.commands import plan_from_args
from edgellm.errors import EdgeLLMError
from edgellm.runtime.generation import load_model
from edgellm.runtime.model_store import resolve_model
from edgellm.services.config import ServeConfig, load_config
from edgellm.services.engine import RequestEngine
from edgellm.services.protocol import Limits

log = logging.getLogger("edgellm.serve")

SHUTDOWN_BUDGET_S = 8.0      # systemd's default TimeoutStopSec is 90 s; we promise 10
STATUS_EVERY_S = 10.0
HEALTH_EVERY_S = 0.5
LOAD_EXTEND_EVERY_S = 5.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="TOML file naming the model, engine limits and adapters")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and exit (0 = valid)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override [log] level")
    parser.add_argument("--no-speculate", dest="speculate", action="store_false", default=None,
                        help="override [engine] speculate with false (one token per pass; the same output)")


def with_overrides(cfg: ServeConfig, args) -> ServeConfig:
    """The config with the command line's overrides of its keys applied (they outlast a
    SIGHUP reload, which reads the file again)."""
    if getattr(args, "speculate", None) is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, speculate=args.speculate))
    return cfg


def engine_limits(cfg: ServeConfig) -> Limits:
    e = cfg.engine
    return Limits(max_prompt_tokens=e.max_prompt_tokens, max_tokens=e.max_tokens,
                  default_max_tokens=e.default_max_tokens, default_deadline_s=e.deadline_s,
                  max_deadline_s=e.max_deadline_s)


def plan_for(cfg: ServeConfig, gguf, device: str | None = None, memory_budget: str | None = None):
    """The memory plan serve loads its model with (deploy/memory_limits.py sets the unit's
    limits from the same plan): the config's context and threads, and its parallel slots
    (0: as many as the plan fits, up to 4)."""
    args = argparse.Namespace(device=device, memory_budget=memory_budget, ctx=cfg.model.n_ctx,
                              threads=cfg.model.threads, mlock=False,
                              parallel=cfg.engine.parallel or None, serve=True)
    return plan_from_args(args, gguf)


def build_engine(model, cfg: ServeConfig) -> RequestEngine:
    e = cfg.engine
    return RequestEngine(model, engine_limits(cfg), queue_size=e.queue_size,
                         system_prompt=e.system_prompt, node=e.node,
                         stall_timeout_s=e.stall_timeout_s, speculate=e.speculate)


def build_adapters(cfg: ServeConfig, engine: RequestEngine, only=None) -> dict:
    """Adapter objects by name (not started), for the enabled tables of `cfg`."""
    adapters = {}
    wanted = set(cfg.adapters()) if only is None else set(only) & set(cfg.adapters())
    # Each transport's module (and its library: paho, pyserial, waitress) is imported only
    # when its table is enabled: a serial-only board loads no HTTP server.
    if "mqtt" in wanted:
        from edgellm.services.mqtt import MQTTService
        adapters["mqtt"] = MQTTService(engine, cfg.mqtt)
    for s in cfg.serial:
        if f"serial:{s.port}" in wanted:
            from edgellm.services.serial_line import SerialService
            adapters[f"serial:{s.port}"] = SerialService(
                engine, s.port, baud=s.baud, mode=s.mode, flow_control=s.flow_control,
                max_frame_bytes=s.max_frame_bytes)
    if "socket" in wanted:
        from edgellm.services.local_socket import LocalSocketService
        c = cfg.socket
        adapters["socket"] = LocalSocketService(engine, path=c.path, mode=c.mode,
                                                group=c.group, tcp_host=c.tcp_host,
                                                tcp_port=c.tcp_port,
                                                max_line_bytes=c.max_line_bytes,
                                                bearer_token=c.bearer_token)
    if "http" in wanted:
        from edgellm.services.http_api import HTTPService
        c = cfg.http
        adapters["http"] = HTTPService(engine, host=c.host, port=c.port,
                                       bearer_token=c.bearer_token,
                                       max_body_bytes=c.max_body_bytes,
                                       idle_timeout_s=c.idle_timeout_s,
                                       max_connections=c.max_connections,
                                       threads=c.threads)
    return adapters


def _adapter_config(cfg: ServeConfig, name: str):
    if name.startswith("serial:"):
        return next((s for s in cfg.serial if f"serial:{s.port}" == name), None)
    return getattr(cfg, name)


def _notifier():
    from edgellm.services.systemd_notify import SystemdNotifier, Watchdog
    return SystemdNotifier.from_environment(unset=True), Watchdog


class Server:
    """A running `serve`: engine + adapters. run_serve drives it; tests may too."""

    def __init__(self, cfg: ServeConfig, model):
        self.cfg = cfg
        self.model = model
        self.engine = build_engine(model, cfg)
        self.engine.adapter_states = self.adapter_states
        self.adapters: dict = {}

    def adapter_states(self) -> dict[str, str]:
        """Adapter name -> "ok", or what keeps it from serving (a broker that is down)."""
        return {name: getattr(adapter, "problem", None) or "ok"
                for name, adapter in list(self.adapters.items())}

    def start(self) -> None:
        self.engine.start()
        adapters = build_adapters(self.cfg, self.engine)
        try:
            for name, adapter in adapters.items():
                adapter.start()
                self.adapters[name] = adapter
        except Exception:
            self.stop()
            raise

    def stop(self, budget_s: float = SHUTDOWN_BUDGET_S) -> None:
        end = time.monotonic() + budget_s
        for adapter in self.adapters.values():
            _quietly(adapter.stop_accepting)
        # Queued and running jobs end now with "shutting_down" replies through the adapters.
        self.engine.stop(timeout=min(3.0, budget_s / 2))
        for name, adapter in list(self.adapters.items()):
            left = max(0.2, (end - time.monotonic()) / max(1, len(self.adapters)))
            _quietly(adapter.close, left)
        self.adapters.clear()

    def reload(self, new: ServeConfig) -> list[str]:
        """Applies a new config in place; returns what changed, for the log."""
        changes = []
        if new.model != self.cfg.model:
            changes.append("[model] changed: restart the service to load another model "
                           "(kept the current one)")
        if new.engine != self.cfg.engine:
            e = new.engine
            self.engine.limits = engine_limits(new)
            self.engine.queue_size = e.queue_size
            self.engine.system_prompt = e.system_prompt
            self.engine.stall_timeout_s = e.stall_timeout_s
            self.engine.speculate = e.speculate   # read as each request starts
            changes.append("[engine] applied")
        old_names, new_names = set(self.adapters), set(new.adapters())
        changed = {name for name in old_names | new_names
                   if name not in old_names or name not in new_names
                   or _adapter_config(new, name) != _adapter_config(self.cfg, name)}
        fresh = build_adapters(new, self.engine, only=changed)
        for name in sorted(changed):
            if name in self.adapters:
                adapter = self.adapters.pop(name)
                _quietly(adapter.stop_accepting)
                _quietly(adapter.close, 2.0)
                changes.append(f"{name} stopped")
            if name in fresh:
                try:
                    fresh[name].start()
                    self.adapters[name] = fresh[name]
                    changes.append(f"{name} started")
                except Exception as exc:
                    changes.append(f"{name} failed to start: {exc}")
        self.cfg = dataclasses.replace(new, model=self.cfg.model)
        return changes


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("while stopping: %s", getattr(fn, "__qualname__", fn))


def run_serve(args) -> int:
    try:
        cfg = with_overrides(load_config(args.config), args)
    except EdgeLLMError as exc:
        print(f"edgellm serve: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "check", False):
        print(f"{args.config}: OK ({', '.join(cfg.adapters())})")
        return 0
    level = (getattr(args, "log_level", None) or cfg.log.level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    notifier, Watchdog = _notifier()
    notifier.status("loading model")
    loaded = threading.Event()

    def keep_extending():
        # A slow SD card can take longer than TimeoutStartSec= to map and check the model:
        # ask for a little more time, repeatedly, only while loading really goes on.
        while not loaded.wait(LOAD_EXTEND_EVERY_S):
            notifier.extend_timeout(int(LOAD_EXTEND_EVERY_S * 3 * 1e6))

    notifier.extend_timeout(int(LOAD_EXTEND_EVERY_S * 3 * 1e6))
    threading.Thread(target=keep_extending, name="load-extend", daemon=True).start()
    try:
        model = load_model(resolve_model(cfg.model.path), n_ctx=cfg.model.n_ctx, threads=cfg.model.threads,
                           plan=lambda gguf: plan_for(cfg, gguf))
        model.chat_template  # parsed now: a template that does not parse stops startup, not a request
    except EdgeLLMError as exc:
        print(f"edgellm serve: {exc}", file=sys.stderr)
        return 1
    finally:
        loaded.set()
    log.info("model %s loaded (n_ctx %d, %d parallel slots)", getattr(model, "name", "?"),
             model.n_ctx, model.parallel)

    server = Server(cfg, model)
    try:
        server.start()
    except (OSError, EdgeLLMError) as exc:
        print(f"edgellm serve: {exc}", file=sys.stderr)
        return 1

    wake = threading.Event()
    signals = {"stop": False, "reload": False}

    def on_signal(signum, frame):
        signals["reload" if signum == signal.SIGHUP else "stop"] = True
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def status_line() -> str:
        st = server.engine.status()
        down = [f"; {name} down: {state}" for name, state in st["adapters"].items()
                if state != "ok"]
        return (f"serving {st['model']} on {', '.join(server.adapters)}; queue "
                f"{st['queue_depth']}/{st['queue_size']}, {st['tokens_per_s']} tok/s"
                + "".join(down))

    notifier.ready(status_line())
    watchdog = Watchdog(notifier, server.engine.is_healthy)
    watchdog.start()
    log.info("ready: %s", ", ".join(server.adapters))

    stalled = False
    last_status = time.monotonic()
    while not signals["stop"]:
        wake.wait(HEALTH_EVERY_S)
        wake.clear()
        healthy = server.engine.is_healthy()
        if healthy == stalled and not signals["stop"]:
            # A transition: say it at once (`systemctl status` shows why pings stopped).
            stalled = not healthy
            if stalled:
                log.error("engine stalled: no progress for %.0f s; withholding WATCHDOG=1",
                          server.engine.stall_timeout_s)
                notifier.status(f"engine stalled: no progress for "
                                f"{server.engine.stall_timeout_s:g} s")
            else:
                log.warning("engine progressing again")
                notifier.status(status_line())
            last_status = time.monotonic()
        if signals["reload"] and not signals["stop"]:
            signals["reload"] = False
            notifier.reloading("reloading config")
            try:
                new = with_overrides(load_config(args.config), args)
            except EdgeLLMError as exc:
                log.error("reload: %s; keeping the running config", exc)
            else:
                for change in server.reload(new):
                    log.info("reload: %s", change)
            notifier.ready(status_line())
        elif not signals["stop"] and not stalled and \
                time.monotonic() - last_status >= STATUS_EVERY_S:
            notifier.status(status_line())
            last_status = time.monotonic()

    log.info("stopping")
    notifier.stopping("stopping: answering in-flight requests")
    watchdog.stop()
    server.stop()
    notifier.close()
    log.info("stopped")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgellm serve", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
