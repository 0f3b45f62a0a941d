"""Reads OpenMetrics text on stdin with prometheus_client's strict OpenMetrics parser and
prints every sample as JSON [name, labels, value]. Exits non-zero if the text is refused."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump(samples, sys.stdout)
