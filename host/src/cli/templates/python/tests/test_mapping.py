"""Native unit tests of the mapping (no WebAssembly, no host): `python3 -m unittest`."""

import unittest

from mapping import Failure, build_request, classify, http_error


class MappingTest(unittest.TestCase):
    def test_posts_the_payload_with_its_keys(self):
        out = build_request("http://127.0.0.1:9100/hook", "order.created", "e1.demo", '{"id":1}')
        self.assertEqual(out.method, "POST")
        self.assertEqual(out.url, "http://127.0.0.1:9100/hook")
        self.assertEqual(out.body, b'{"id":1}')
        self.assertIn(("idempotency-key", "e1.demo"), out.headers)

    def test_classifies_answers(self):
        self.assertIsNone(classify(204, [], b""))
        self.assertEqual(classify(503, [("retry-after", "5")], b"busy"), Failure(True, "HTTP 503: busy", 5000))
        self.assertTrue(classify(500, [], b"").retry)
        self.assertEqual(classify(422, [], b""), Failure(False, "HTTP 422"))

    def test_classifies_requests_without_an_answer(self):
        self.assertTrue(http_error("timeout", "").retry)
        self.assertTrue(http_error("connect", "refused").retry)
        self.assertEqual(http_error("denied", "not allowed"), Failure(False, "denied: not allowed"))


if __name__ == "__main__":
    unittest.main()
