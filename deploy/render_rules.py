#!/usr/bin/env python3
"""Prints the PrometheusRule that carries deploy/prometheus/alerts.yaml's groups.

deploy/check compares its output with deploy/kubernetes/base/prometheusrule.yaml,
and `deploy/check --write-prometheusrule` writes it there.
"""
import os
import sys

import yaml

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "prometheus", "alerts.yaml")) as f:
    rules = yaml.safe_load(f)
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "qscheduler"},
    "spec": rules,
}
sys.stdout.write(
    "# Prometheus Operator form of deploy/prometheus/alerts.yaml (the same\n"
    "# groups; deploy/check fails when they differ). Edit alerts.yaml, then\n"
    "# regenerate this file with `deploy/check --write-prometheusrule`.\n"
)
sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=100))
