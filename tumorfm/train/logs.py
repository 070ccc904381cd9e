"""What a run writes as it goes: JSON lines, CSV curves and TensorBoard events."""

from __future__ import annotations

import csv
import json
from pathlib import Path


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
            lines = path.read_text().splitlines(keepends=True)
            if name == "log.jsonl":
                kept = [x for x in lines if json.loads(x)["epoch"] <= last_epoch]
            else:
                kept = lines[:1] + [x for x in lines[1:] if int(x.split(",")[0]) <= last_epoch]
            path.write_text("".join(kept))

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
        with open(path, "w", newline="") as stream:
            writer = csv.DictWriter(stream, columns)
            writer.writeheader()
            writer.writerows(existing + [flat])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
