# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The containers role's inventory check: hostile and mistaken inventories are refused before
anything is made, naming the culprit."""

from __future__ import annotations

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _nspawn as ns


IMAGES = [{"name": "debian-13"}]


@pytest.mark.parametrize("machines,images,words", [
    ("[]", IMAGES, "containers_machines must be a list of mappings, got str"),
    ([], "[]", "containers_images must be a list of mappings, got str"),
    ([], ["debian-13"], "containers_images must be a list of mappings"),
    ([{"name": "a"}, {"name": "b"}, {"name": "a"}], IMAGES, "machine 'a' is declared twice (#1 and #3)"),
    ([{"name": "x" * 64}], IMAGES, "host name label: 1-63"),
    ([{"name": "a\nb"}], IMAGES, "host name label: 1-63"),
    ([{"name": "a,b"}], IMAGES, "host name label: 1-63"),
    ([{"name": "%n"}], IMAGES, "host name label: 1-63"),
    ([{"name": "\u00e9t\u00e9"}], IMAGES, "host name label: 1-63"),
    ([{"name": "a", "memory_max": "999999T"}], IMAGES, "must be a size from 1 to 1P"),
    ([{"name": "a", "memory_max": "101%"}], IMAGES, "must be a size from 1 to 1P"),
    ([{"name": "a", "memory_max": "1G;rm"}], IMAGES, "must be a size from 1 to 1P"),
    ([{"name": "a", "cpu_weight": 0}], IMAGES, "cpu_weight 0 must be a whole number from 1 to 10000"),
    ([{"name": "a", "image": "debian-12"}], IMAGES, "image 'debian-12' is not declared in containers_images (declared: debian-13)"),
    ([{"name": "a"}], [{"name": "debian-13"}, {"name": "debian-13"}], "declared twice"),
])
def test_the_inventory_is_checked_before_anything(machines, images, words):
    with pytest.raises(ns.MachineError) as caught:
        ns.check_inventory(machines, images, known_images=["built-1"], default_image="debian-13")
    assert words in str(caught.value)


def test_a_good_inventory_passes():
    machines = [{"name": "web1", "memory_max": "2G"}, {"name": "db1", "image": "built-1", "memory_max": "50%"},
                {"name": "gone", "state": "absent", "image": "nowhere"}, {"name": "x" * 63, "memory_max": "1P"}]
    assert ns.check_inventory(machines, IMAGES, known_images=["built-1"], default_image="debian-13") == machines
    assert ns.check_limits({"memory_max": "infinity", "tasks_max": 100}) == [("MemoryMax", "infinity"), ("TasksMax", "100")]
