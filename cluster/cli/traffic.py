"""``ric traffic MODEL [VERSION=WEIGHT ...]``: show or change a model's traffic split between its versions,
live, through the server's repository API (``/v2/repository/models/MODEL/traffic``).

  ric traffic mlp                  the split served now (the config's, or the last one set here)
  ric traffic mlp 1=90 2=10        a canary: one request in ten without a version goes to version 2
  ric traffic mlp 2=100            promote version 2 (all requests without a version)
  ric traffic mlp 1=90 2=10 --sticky-by user   each value of the request parameter "user" keeps one version
  ric traffic mlp --reset          back to the split of the model's config (none: the newest version)

The split is kept by the application's model store sync in Ray's key-value store, so it outlives a restart
of the sync; requests that name a version get that version whatever the split.
"""

from __future__ import annotations

import argparse
import json

import requests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the model")
    parser.add_argument("weights", nargs="*", metavar="VERSION=WEIGHT",
                        help="each version's share (numbers taken relative to their sum)")
    parser.add_argument("--sticky-by", default="", metavar="PARAMETER",
                        help="a request parameter whose value keeps its requests on one version")
    parser.add_argument("--reset", action="store_true", help="serve the split of the model's config again")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's HTTP URL")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="a header to send, e.g. the key of a restricted model-repository API (repeatable)")


def parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        version, _, weight = item.partition("=")
        try:
            weights[str(int(version))] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not VERSION=WEIGHT, e.g. 2=10") from None
    return weights


def main(args: argparse.Namespace) -> int:
    url = f"{args.url.rstrip('/')}/v2/repository/models/{args.model}/traffic"
    try:
        headers = dict(item.split("=", 1) for item in args.header if "=" in item)
        if len(headers) != len(args.header):
            raise argparse.ArgumentTypeError("--header takes KEY=VALUE")
        if args.reset or args.weights:
            if args.reset and args.weights:
                raise argparse.ArgumentTypeError("--reset takes no weights")
            change = {"weights": None} if args.reset else {"weights": parse_weights(args.weights),
                                                           "sticky_by": args.sticky_by}
            reply = requests.post(url, json=change, headers=headers, timeout=150)
        else:
            reply = requests.get(url, headers=headers, timeout=30)
    except argparse.ArgumentTypeError as exc:
        print(f"ric traffic: {exc}")
        return 2
    except requests.RequestException as exc:
        print(f"ric traffic: the server at {args.url} did not answer: {exc}")
        return 2
    body = reply.json() if reply.content else {}
    if reply.status_code != 200:
        print(f"ric traffic: {body.get('error', reply.text)}")
        return 1
    split = body["traffic"]
    if split is None:
        print(f"model '{args.model}': no traffic split (requests without a version go to the newest)")
        return 0
    total = sum(split["weights"].values())
    ordered = sorted(split["weights"].items(), key=lambda item: int(item[0]))
    shares = ", ".join(f"version {v}: {w / total:.1%}" for v, w in ordered)
    sticky = f", sticky by request parameter {split['sticky_by']!r}" if split["sticky_by"] else ""
    print(f"model '{args.model}': {shares}{sticky}")
    print(json.dumps(split))
    return 0
