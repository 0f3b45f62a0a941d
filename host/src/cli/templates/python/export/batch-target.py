class WitWorld(wit_world.WitWorld):
    def deliver_batch(self, events: list[Event]) -> list[Result[None, DeliveryError]]:
        """One request per event; one result per event, in order."""
        results: list[Result[None, DeliveryError]] = []
        for event in events:
            try:
                deliver_one(event)
                results.append(Ok(None))
            except Err as err:
                results.append(err)
        return results
