"""The core's own engines, routers, discovery and transfer backends: plugins like any other.

Each module is one feature and implements the same hooks a third-party plugin would
(``dynamo_core.hookspecs``). ``DEFAULT_PLUGINS`` lists them; the plugin manager registers
exactly these, by name, beside the entry points it loads (as pytest's ``default_plugins`` and
datasette's ``DEFAULT_PLUGINS`` do). Each module keeps its heavy imports inside the factories,
so listing the built-ins costs no engine or client import.
"""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "dynamo_core.builtins.mocker",
    "dynamo_core.builtins.echo",
    "dynamo_core.builtins.simple_routers",
    "dynamo_core.builtins.local_discovery",
    "dynamo_core.builtins.etcd_discovery",
    "dynamo_core.builtins.tcp_transfer",
)
