"""The suite never touches the user's home (issue 12, item 7).

A module-scoped fixture used to run before the function-scoped fixture that redirected
the cache, and wrote decoded data sets into the real ~/.cache/resnets.
"""

import os
from pathlib import Path

import pytest

from resnets.data.cifar import default_cache_dir


@pytest.fixture(scope="module")
def seen_by_a_module_fixture():
    return {"cache": default_cache_dir(), "home": Path.home(), "mpl": os.environ.get("MPLCONFIGDIR")}


def test_module_fixtures_see_an_isolated_home(seen_by_a_module_fixture, real_home):
    for where in seen_by_a_module_fixture.values():
        assert where is not None and not Path(where).resolve().is_relative_to(real_home.resolve()), where


def test_decoded_data_is_cached_outside_the_home(seen_by_a_module_fixture, tiny_cifar, real_home):
    from resnets.data.cifar import read_cifar10

    read_cifar10(tiny_cifar)  # class folders: decoded once, cached in the default cache folder
    cached = list(default_cache_dir().glob("cifar10-*.npz"))
    assert cached and not any(p.resolve().is_relative_to(real_home.resolve()) for p in cached)
