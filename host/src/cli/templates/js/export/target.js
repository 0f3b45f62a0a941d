// Returning is `ok`; throwing an error whose `payload` is a WIT `delivery-error` returns it.
export function deliver(event) {
  deliverOne(event);
}
