"""The `edgellm` command line, above every layer: it composes the runtime, the devices and
the services, and nothing imports it. main.py holds the parser and the commands; bench.py
the `edgellm bench` command and its worker processes.

Kept empty of imports so that `python -m edgellm.cli.bench --worker` (one benchmark run)
loads only what bench needs.
"""
