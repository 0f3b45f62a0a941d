class WitWorld(wit_world.WitWorld):
    def deliver(self, event: Event) -> None:
        """Returning is `ok`; raising `Err(<delivery-error>)` returns that error."""
        deliver_one(event)
