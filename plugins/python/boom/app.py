"""Boom: a TEST FIXTURE, not an example adapter. `deliver` raises `ValueError("boom 42")`,
so the host must show the traceback's last lines (written to stderr) in `plugin run` and in
the attempt's error."""

import wit_world
from wit_world.imports.types import Event


class WitWorld(wit_world.WitWorld):
    def deliver(self, event: Event) -> None:
        raise ValueError(f"boom {6 * 7}")
