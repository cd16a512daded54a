# Copyright: (c) 2026, replica.cloud contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Machine images: the key of a VM disk image, its size, and the kernel picked from /boot."""

from __future__ import annotations

import pytest

from ansible_collections.replica.cloud.plugins.module_utils import _image as img


def test_a_disk_image_key_depends_on_its_size_and_differs_from_the_folder_image():
    tree = img.image_key("bookworm", ["a"], ["src"])
    assert tree == img.image_key("bookworm", ["a"], ["src"], disk_size=None)
    two = img.image_key("bookworm", ["a"], ["src"], disk_size="2048M")
    assert two not in (tree, img.image_key("bookworm", ["a"], ["src"], disk_size="4096M"))


@pytest.mark.parametrize("value,mib", [("2G", "2048M"), ("512M", "512M"), ("4GiB", "4096M"), ("1t", "1048576M")])
def test_disk_size(value, mib):
    assert img.disk_size(value) == mib


@pytest.mark.parametrize("value,message", [("lots", "size like"), ("0G", "size like"), ("100M", "too small"),
                                           ("2", "size like")])
def test_bad_disk_size(value, message):
    with pytest.raises(img.ImageError, match=message):
        img.disk_size(value)


def test_boot_files_pick_the_newest_kernel_and_its_initrd():
    names = ["config-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-9-cloud-amd64", "initrd.img-6.1.0-9-cloud-amd64",
             "vmlinuz-6.1.0-10-cloud-amd64", "initrd.img-6.1.0-10-cloud-amd64", "System.map-6.1.0-10-cloud-amd64"]
    assert img.boot_files(names) == ("vmlinuz-6.1.0-10-cloud-amd64", "initrd.img-6.1.0-10-cloud-amd64")
    assert img.boot_files(["vmlinuz-6.1.0-10-amd64"]) == ("vmlinuz-6.1.0-10-amd64", None)
    assert img.boot_files(["config-x", "grub"]) == (None, None)


def test_host_aptopts_are_the_acquire_files_without_hooks(tmp_path):
    (tmp_path / "01proxy").write_text('Acquire::http::Proxy "http://proxy:3142";\n')
    (tmp_path / "20nothing").write_text('APT::Install-Recommends "false";\n')
    # appstream's file: index targets and a refresh hook that runs the host's appstreamcli
    (tmp_path / "50appstream").write_text('Acquire::IndexTargets { deb::DEP-11 { MetaKey "x"; }; };\n'
                                          'APT::Update::Post-Invoke-Success { "appstreamcli refresh"; };\n')
    found = img.read_host_aptopts(str(tmp_path))
    assert [path.rsplit("/", 1)[1] for path, _text in found] == ["01proxy"]
    assert img.read_host_aptopts(str(tmp_path / "missing")) == []


def test_scratch_names_are_hidden_and_never_an_image():
    """What a killed build leaves, removed by the next run: dot-names, so never an image's name
    (check_name refuses a leading dot) and never listed as an image."""
    tree, disk = img.scratch_names("debian-12"), img.scratch_names("debian-12", disk=True)
    assert tree == [".debian-12.partial", ".debian-12.old"]
    assert disk == [".debian-12.tree", ".debian-12.raw.partial", ".debian-12.vmlinuz.partial", ".debian-12.initrd.img.partial"]
    for name in tree + disk:
        with pytest.raises(img.ImageError):
            img.check_name(name)
