"""The test bed's own rules: every module that starts a local Ray is in conftest's RAY_MODULES
(xdist runs those on one worker, in turn; two Rays at once collide on HAProxy's ports)."""

from pathlib import Path

from ray_modules import RAY_MODULES

ROOT = Path(__file__).resolve().parents[1]
STARTS_RAY = ("serve_cmd.start(", "ray_temp_dir()", "ray.init(", "faults.main(")


def test_every_module_that_starts_ray_is_listed():
    starting = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if path != Path(__file__) and any(token in path.read_text() for token in STARTS_RAY)
    }
    assert starting, "the scan found nothing: the tokens are stale"
    assert starting <= RAY_MODULES, sorted(starting - RAY_MODULES)
    assert all((ROOT / module).is_file() for module in RAY_MODULES)
