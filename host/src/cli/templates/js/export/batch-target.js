// One request per event; one result per event, in order.
export function deliverBatch(events) {
  return events.map((event) => {
    try {
      deliverOne(event);
      return { tag: 'ok', val: undefined };
    } catch (err) {
      if (!(err instanceof DeliveryError)) throw err;
      return { tag: 'err', val: err.payload };
    }
  });
}
