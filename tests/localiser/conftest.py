"""One tiny synthetic cohort and one localiser trained on it, shared by the localiser tests.

Small on purpose (test time): 16 demo-profile cases, a 8 x 32 x 32 grid at 10 x 8 x 8 mm
(80 x 256 x 256 mm, the whole field of view), a three-level UNet (8-32 features)."""
from __future__ import annotations

import pytest

synthetic = pytest.importorskip("distmsfa.data.synthetic")

N_CASES, N_TRAIN = 16, 12


@pytest.fixture(scope="session")
def tiny_cfg():
    from distmsfa.localiser import LocaliserConfig

    return LocaliserConfig(grid_size_dhw=(8, 32, 32), spacing_dhw_mm=(10.0, 8.0, 8.0), channels=(8, 16, 32),
                           num_res_units=0)


@pytest.fixture(scope="session")
def tiny_train_cfg():
    from distmsfa.localiser import LocaliserTrainConfig

    return LocaliserTrainConfig(epochs=25, batch_size=2, lr=1e-2, shift_vox=(1, 2, 2), seed=0)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("loc_cohort")
    return synthetic.generate_cohort(out, n=N_CASES, seed=11, progress=False, external_site=None,
                                     sites=("TAH", "NHH"))


@pytest.fixture(scope="session")
def coarse_cases(cohort, tiny_cfg):
    from distmsfa.io.manifest import load_manifest
    from distmsfa.localiser import load_cases

    cases, failures = load_cases(load_manifest(cohort).cases, tiny_cfg)
    assert not failures, failures
    return cases


@pytest.fixture(scope="session")
def trained(coarse_cases, tiny_cfg, tiny_train_cfg, tmp_path_factory):
    """(localiser folder, Localiser, held-out cases): trained on the first N_TRAIN cases."""
    from distmsfa.localiser import fit, load_localiser, save_localiser

    loc, _ = fit(coarse_cases[:N_TRAIN], tiny_cfg, tiny_train_cfg)
    folder = save_localiser(loc, tmp_path_factory.mktemp("loc") / "L")
    return folder, load_localiser(folder), coarse_cases[N_TRAIN:]
