"""edgellm.services: one request engine on one model, and the transports in front of it.

    protocol.py        the request/reply schema every transport shares, error codes
    engine.py          RequestEngine: bounded queue, deadlines, cancellation, streaming
    stream_session.py  one byte-stream client (socket connection, serial line)
    framing.py         NDJSON lines and COBS + CRC-32 frames
    mqtt.py            MQTT v5 / v3.1.1 (paho-mqtt 2.x), compact mode, status, discovery
    serial_line.py     pyserial, text or binary framing
    local_socket.py    Unix domain socket (0660, peer credentials) and localhost TCP
    http_api.py        OpenAI- and Ollama-compatible HTTP, /health
    config.py          the TOML config of `edgellm serve`
    serve.py           `edgellm serve`: lifecycle, signals, systemd notify
"""
