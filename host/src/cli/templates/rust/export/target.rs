impl bindings::Guest for Plugin {
    fn deliver(event: Event) -> Result<(), DeliveryError> {
        deliver_one(&event).map_err(into_wit)
    }
}
