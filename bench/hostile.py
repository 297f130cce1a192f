#!/usr/bin/env python3
"""Writes the hostile reviews of the memory scenario (issue 11) into a directory:

  maps.json     a Deployment CREATE whose first container is followed by a million one-key
                maps ({"": 0}) in spec.template.spec.containers, ~7 MiB
  numbers.json  a Deployment CREATE carrying a million-plus small numbers (spec.numbers), ~7 MiB
  env.json      a 3 MiB Deployment CREATE with 242 000 env entries (a shape the API server
                accepts)

Each stays under the default limits.max_body_bytes (7 MiB).
"""
import json
import sys

LIMIT = 7 * 1024 * 1024


def b62(i):
    digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while True:
        i, r = divmod(i, 62)
        out = digits[r] + out
        if i == 0:
            return out


def review(uid, spec_extra=None, containers_tail="", env=""):
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "app"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1", "env": "ENV"}]},
            },
        },
    }
    if spec_extra is not None:
        dep["spec"]["numbers"] = "NUMBERS"
    req = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": "web",
            "namespace": "app",
            "operation": "CREATE",
            "userInfo": {"username": "mallory"},
            "object": dep,
            "dryRun": False,
        },
    }
    text = json.dumps(req, separators=(",", ":"))
    text = text.replace('"ENV"', "[" + env + "]")
    text = text.replace('"NUMBERS"', "[" + (spec_extra or "") + "]")
    if containers_tail:
        text = text.replace('"env":[]}]', '"env":[]}' + containers_tail + "]")
    return text


def main(out):
    budget = LIMIT - 4096
    maps = ',{"":0}' * ((budget - 1024) // 7)
    maps = maps[: budget - 1024 - (budget - 1024) % 7]
    bodies = {
        "maps": review("hostile-maps", containers_tail=maps),
        "numbers": review("hostile-numbers", spec_extra=",".join(["1"] * ((budget - 1024) // 2))),
        "env": review(
            "hostile-env",
            env=",".join('{"name":"%s"}' % b62(i) for i in range(242_000)),
        ),
    }
    for name, text in bodies.items():
        assert len(text) <= LIMIT, (name, len(text))
        json.loads(text)
        with open(f"{out}/{name}.json", "w") as f:
            f.write(text)
        print(f"{name}.json {len(text)} B")


if __name__ == "__main__":
    main(sys.argv[1])
