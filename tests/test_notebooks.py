"Run every notebook in nbs/ as a test, through nbdev's own runner, one pytest test per notebook"
import os
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.doclinks import nbglob
import nbdev.test as nbdev_test  # imported as a module: pytest would collect a bare `test_nb`

cfg = get_config()
NBS = sorted(Path(f).resolve() for f in nbglob(cfg.nbs_path, as_path=True))
SKIP_FLAGS = cfg.tst_flags.split()          # `slow` and `cuda` cells are skipped unless forced
FORCE_FLAGS = os.environ.get('VDM_NB_TEST_FLAGS', '').split()   # e.g. VDM_NB_TEST_FLAGS=slow


def _id(p: Path) -> str: return str(p.relative_to(cfg.nbs_path.resolve()))


def test_notebooks_found():
    "The glob must find the chapters; an empty run would pass vacuously"
    names = {p.name for p in NBS}
    assert {'index.ipynb', '01_forward.ipynb'} <= names, names


@pytest.mark.parametrize('nb', NBS, ids=_id)
def test_notebook(nb: Path):
    ok, secs = nbdev_test.test_nb(nb, skip_flags=SKIP_FLAGS, force_flags=FORCE_FLAGS, basepath=cfg.config_path)
    assert ok, f'{_id(nb)} failed (traceback above); run it in Jupyter to debug'
