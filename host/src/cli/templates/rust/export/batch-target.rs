impl bindings::Guest for Plugin {
    /// One request per event; one result per event, in order.
    fn deliver_batch(events: Vec<Event>) -> Vec<Result<(), DeliveryError>> {
        events.iter().map(|event| deliver_one(event).map_err(into_wit)).collect()
    }
}
