"""What a run writes as it goes: JSON lines, CSV curves and TensorBoard events."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from tumorfm.files import write_text


class RunLogs:
    """JSON lines, CSV curves and TensorBoard events, written by the main process only."""

    def __init__(self, run: Path, enabled: bool):
        self.run, self.enabled, self.writer = run, enabled, None
        if enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(run / "tensorboard"))

    def rewind(self, last_epoch: int) -> None:
        """On resume: drop lines of epochs after the saved state (a kill between log and state)."""
        if not self.enabled:
            return
        for name in ("log.jsonl", "curves.csv"):
            path = self.run / name
            if not path.is_file():
                continue
            lines = path.read_text(errors="replace").splitlines(keepends=True)
            if name == "log.jsonl":
                kept = [x for x in lines if _epoch_of_line(x) <= last_epoch]
            else:
                kept = lines[:1] + [x for x in lines[1:] if _epoch_of_row(x) <= last_epoch]
            write_text(path, "".join(kept))

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.run / "log.jsonl", "a") as stream:
            stream.write(json.dumps(row) + "\n")
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for dataset, per_class in row.get("val_dice", {}).items():
            flat.update({f"val_dice/{dataset}/{name}": v for name, v in per_class.items()})
        for key, value in flat.items():
            if isinstance(value, int | float) and key != "epoch":
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()
        path = self.run / "curves.csv"
        existing = list(csv.DictReader(path.open())) if path.is_file() else []
        columns = list(dict.fromkeys([c for r in existing for c in r] + list(flat)))
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, columns)
        writer.writeheader()
        writer.writerows(existing + [flat])
        write_text(path, table.getvalue())  # atomic: a kill leaves the old curves or the new

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_rows(run: Path) -> list[dict]:
    """The run's log rows, one per epoch; a half-written last line (a kill during the append)
    is left out."""
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [json.loads(line) for line in lines if _epoch_of_line(line) != math.inf]


def _epoch_of_line(line: str) -> float:
    """A log line's epoch; a half-written line (a kill during the append) is dropped."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _epoch_of_row(line: str) -> float:
    try:
        return int(line.split(",")[0])
    except ValueError:
        return math.inf
