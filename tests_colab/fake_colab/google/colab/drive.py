import os
from pathlib import Path


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    if os.environ.get("FAKE_COLAB_DRIVE", "decline") != "accept":
        # what Colab raises when the learner closes or declines the permission dialog
        raise ValueError("mount failed: credential propagation was unsuccessful")
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
