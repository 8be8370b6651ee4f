"""``ric profile MODEL_FOLDER --data FILE``: write a model's drift reference profile from reference data (the
data it was trained or validated on), for its config's ``drift`` block.

  ric profile models/mlp --data reference.npz            writes models/mlp/reference.json
  ric profile models/mlp --data reference.parquet --columns --bins 20

``.npz``: one array per tensor, named as the model's inputs (and outputs), rows along the first dim.
``.parquet`` (needs pyarrow): one column per tensor (a column of lists becomes a 2-D tensor). Then, in the
model's config.pbtxt: ``parameters { key: "drift.reference" value { string_value: "reference.json" } }``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from deployments.operations.drift import profile_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", type=Path, help="the model's folder in the repository")
    parser.add_argument("--data", type=Path, required=True, help="reference data: a .npz or .parquet file")
    parser.add_argument("--output", type=Path, help="where to write the profile (default MODEL_FOLDER/reference.json)")
    parser.add_argument("--bins", type=int, default=10, help="bins per number feature, at the reference's quantiles "
                                                             "(default 10)")
    parser.add_argument("--columns", action="store_true", help="profile each column of a tensor's last dim too")


def read_data(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    if path.suffix == ".parquet":
        try:
            import pandas
            frame = pandas.read_parquet(path)
        except ImportError as exc:
            raise ValueError(f"reading {path.name} needs pandas and pyarrow ({exc}); or save it as .npz") from None
        return {name: np.stack(frame[name].to_numpy()) if frame[name].dtype == object and isinstance(
            frame[name].iloc[0], (list, np.ndarray)) else frame[name].to_numpy() for name in frame.columns}
    raise ValueError(f"{path.name}: reference data must be a .npz or .parquet file")


def main(args: argparse.Namespace) -> int:
    if args.bins < 2:
        print("ric profile: --bins must be at least 2")
        return 2
    try:
        profile = profile_of(read_data(args.data), args.bins, args.columns)
    except (OSError, ValueError) as exc:
        print(f"ric profile: {exc}")
        return 2
    output = args.output or args.model_folder / "reference.json"
    output.write_text(json.dumps(profile, indent=1))
    print(f"wrote {output}: {len(profile['features'])} features ({', '.join(profile['features'])})")
    if output.parent == args.model_folder:
        print(f'in {args.model_folder / "config.pbtxt"}: parameters {{ key: "drift.reference" value {{ string_value: '
              f'"{output.name}" }} }}')
    return 0
