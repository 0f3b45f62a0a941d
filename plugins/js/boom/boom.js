// Boom: a TEST FIXTURE, not an example adapter. `deliver` throws an uncaught
// `Error("boom 42")`, so the host must show the runtime's report of it (written to stderr)
// in `plugin run` and in the attempt's error.
export function deliver(event) {
  throw new Error(`boom ${6 * 7}`);
}
