#!/usr/bin/env python3
"""Tests for tuning/check against fake /proc and /sys trees.

Run: python3 tuning/test_check.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "check")
GIB = 1 << 30

LINE = re.compile(r"^(OK|WARN|CRIT) +[^:]+: .+ -> .+$")


def limits(memlock_soft="unlimited", memlock_hard="unlimited", nofile_soft=1048576, nofile_hard=1048576):
    return (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max cpu time              unlimited            unlimited            seconds   \n"
        "Max open files            %-20s %-20s files     \n"
        "Max locked memory         %-20s %-20s bytes     \n"
    ) % (nofile_soft, nofile_hard, memlock_soft, memlock_hard)


def status(uid=1000, gid=1000, groups="1000", cpus="0-7", seccomp=0):
    return ("Name:\tpython3\nUid:\t{u}\t{u}\t{u}\t{u}\nGid:\t{g}\t{g}\t{g}\t{g}\nGroups:\t{gs}\n"
            "Seccomp:\t{sc}\nCpus_allowed_list:\t{c}\n").format(u=uid, g=gid, gs=groups, c=cpus, sc=seccomp)


def healthy(ncpu=8):
    """A well-tuned 8-CPU NVMe host, data dir /srv/strom on ext4 noatime."""
    f = {
        "proc/sys/kernel/osrelease": "6.6.30-generic\n",
        "proc/sys/kernel/io_uring_disabled": "0\n",
        "proc/self/limits": limits(),
        "proc/self/status": status(),
        "proc/cmdline": "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p1 ro quiet\n",
        "proc/self/mountinfo": (
            "22 1 0:21 / /proc rw,relatime - proc proc rw\n"
            "27 1 259:0 / / rw,noatime - ext4 /dev/nvme0n1p2 rw\n"
            "30 27 259:1 / /srv/strom rw,noatime - ext4 /dev/nvme0n1p1 rw\n"
            "31 27 0:40 / /dev/shm rw,nosuid - tmpfs tmpfs rw\n"),
        "proc/sys/vm/swappiness": "1\n",
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n",
        "proc/interrupts": (
            "           " + "".join("CPU%-8d" % c for c in range(ncpu)) + "\n"
            " 60: " + "0 " * ncpu + " PCI-MSI 524288-edge      eth0-TxRx-0\n"
            " 61: " + "0 " * ncpu + " PCI-MSI 524289-edge      eth0-TxRx-1\n"
            " 70: " + "0 " * ncpu + " PCI-MSI 1-edge      nvme0q1\n"
            "NMI: " + "0 " * ncpu + " Non-maskable interrupts\n"),
        "proc/irq/60/smp_affinity_list": "6\n",
        "proc/irq/61/smp_affinity_list": "7\n",
        "proc/irq/70/smp_affinity_list": "0\n",
        "sys/devices/system/cpu/online": "0-%d\n" % (ncpu - 1),
        "sys/devices/system/cpu/isolated": "\n",
        "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
        "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise [madvise] never\n",
        # the disk, with partitions; /sys/dev/block links are added as symlinks
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/dev": "259:3\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/scheduler": "[none] mq-deadline kyber\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/rotational": "0\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/logical_block_size": "512\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/physical_block_size": "4096\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/write_cache": "write through\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p1/dev": "259:1\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p1/partition": "1\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p2/dev": "259:0\n",
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p2/partition": "2\n",
        "sys/devices/pci0000:00/0000:00:05.0/net/eth0/address": "00:11:22:33:44:55\n",
        "sys/devices/pci0000:00/0000:00:05.0/msi_irqs/60": "msix\n",
        "sys/devices/pci0000:00/0000:00:05.0/msi_irqs/61": "msix\n",
        "sys/devices/virtual/net/lo/address": "00:00:00:00:00:00\n",
    }
    for c in range(ncpu):
        f["sys/devices/system/cpu/cpu%d/topology/thread_siblings_list" % c] = "%d\n" % c
        f["sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % c] = "performance\n"
    links = {
        "sys/dev/block/259:3": "../../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
        "sys/dev/block/259:1": "../../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p1",
        "sys/dev/block/259:0": "../../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p2",
        "sys/block/nvme0n1": "../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
        "sys/class/net/eth0": "../../devices/pci0000:00/0000:00:05.0/net/eth0",
        "sys/class/net/lo": "../../devices/virtual/net/lo",
        "sys/devices/pci0000:00/0000:00:05.0/net/eth0/device": "../../../0000:00:05.0",
    }
    return f, links


class CheckTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="strom-check-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def build(self, files, links=None):
        root = os.path.join(self.tmp, "root%d" % len(os.listdir(self.tmp)))
        os.makedirs(root)
        for rel, text in files.items():
            if text is None:
                continue
            p = os.path.join(root, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as fh:
                fh.write(text)
        for rel, target in (links or {}).items():
            p = os.path.join(root, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            os.symlink(target, p)
        return root

    def run_check(self, root, *args):
        p = subprocess.run([sys.executable, CHECK, "--root", root] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        return p.returncode, p.stdout, p.stderr

    def findings(self, root, *args):
        code, out, err = self.run_check(root, "--json", *args)
        self.assertIn(code, (0, 1), err)
        data = json.loads(out)
        self.assertEqual(data["exit_code"], code)
        return code, data["findings"]

    def levels(self, findings, area):
        return [f["level"] for f in findings if f["area"] == area]

    def find(self, findings, area, level=None):
        hits = [f for f in findings if f["area"] == area and (level is None or f["level"] == level)]
        self.assertTrue(hits, "no %s finding for %s in %s" % (level or "any", area, findings))
        return hits[0]

    # ---------------------------------------------------------------- OK

    def test_healthy_host_is_all_ok(self):
        files, links = healthy()
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        bad = [f for f in fs if f["level"] != "OK"]
        self.assertEqual(bad, [], bad)
        self.assertEqual(code, 0)
        fsf = self.find(fs, "filesystem")
        self.assertIn("/dev/nvme0n1p1", fsf["found"])
        self.assertIn("ext4", fsf["found"])
        self.assertIn("nvme0n1 (partition nvme0n1p1)", self.find(fs, "disk")["found"])
        self.assertIn("none", self.find(fs, "io scheduler")["found"])
        self.assertIn("IO_MEMORY_BYTES", self.find(fs, "memlock")["found"])
        self.assertIn("none on shard CPUs 0-5", self.find(fs, "nic irq")["found"])

    def test_text_output_format(self):
        files, links = healthy()
        root = self.build(files, links)
        code, out, _ = self.run_check(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertEqual(code, 0)
        lines = out.strip().splitlines()
        self.assertTrue(lines[-1].startswith("summary:"))
        for line in lines[:-1]:
            self.assertRegex(line, LINE)

    def test_missing_files_do_not_crash(self):
        root = self.build({"README": "empty tree\n"})
        code, out, err = self.run_check(root, "--data-dir", "/srv/strom")
        self.assertEqual(code, 0, err)
        self.assertNotIn("Traceback", err)
        for line in out.strip().splitlines()[:-1]:
            self.assertRegex(line, LINE)
            self.assertFalse(line.startswith("CRIT"), line)
        self.assertIn("not visible", out)

    def test_whole_virtual_disk_found_without_dev_block_links(self):
        files, _ = healthy()
        files["proc/self/mountinfo"] = "27 1 254:0 / / rw,noatime - xfs /dev/vda rw\n"
        for k in list(files):
            if k.startswith("sys/devices/pci0000:00/0000:00:04.0"):
                del files[k]
        files.update({
            "sys/block/vda/dev": "254:0\n",
            "sys/block/vda/queue/scheduler": "none [mq-deadline] kyber bfq\n",
            "sys/block/vda/queue/rotational": "0\n",
            "sys/block/vda/queue/logical_block_size": "512\n",
            "sys/block/vda/queue/physical_block_size": "512\n",
        })
        root = self.build(files)
        code, fs = self.findings(root, "--data-dir", "/var/lib/strom", "--cores", "6")
        self.assertEqual(code, 0)
        self.assertIn("vda", self.find(fs, "disk")["found"])
        self.assertEqual(self.levels(fs, "io scheduler"), ["OK"])
        self.assertEqual(self.levels(fs, "alignment"), ["OK"])
        self.assertIn("xfs", self.find(fs, "filesystem")["found"])

    # -------------------------------------------------------------- WARN

    def test_untuned_host_warns_but_exits_zero(self):
        files, links = healthy()
        files["proc/sys/kernel/osrelease"] = "5.15.0-91-generic\n"
        files["proc/self/limits"] = limits(memlock_soft=65536, memlock_hard="unlimited", nofile_soft=1024)
        files["proc/self/mountinfo"] = files["proc/self/mountinfo"].replace(
            "/srv/strom rw,noatime - ext4 /dev/nvme0n1p1 rw", "/srv/strom rw,relatime - ext4 /dev/nvme0n1p1 rw,discard")
        files["proc/sys/vm/swappiness"] = "60\n"
        files["proc/swaps"] += "/swapfile file 2097148 0 -2\n"
        files["sys/kernel/mm/transparent_hugepage/enabled"] = "[always] madvise never\n"
        files["sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/scheduler"] = "none mq-deadline [bfq]\n"
        files["proc/irq/60/smp_affinity_list"] = "0-7\n"
        files["proc/3/comm"] = "irqbalance\n"
        for c in range(8):
            files["sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % c] = "powersave\n"
            files["sys/devices/system/cpu/cpu%d/topology/thread_siblings_list" % c] = "%d,%d\n" % (c % 4, c % 4 + 4)
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertEqual(code, 0)
        self.assertEqual([f for f in fs if f["level"] == "CRIT"], [])
        for area in ("kernel", "memlock", "fd limit", "governor", "thp", "swappiness", "io scheduler", "smt",
                     "nic irq"):
            self.assertIn("WARN", self.levels(fs, area), area)
        self.assertIn("discard", " ".join(f["found"] for f in fs if f["area"] == "mount options"))
        self.assertIn("performance", self.find(fs, "governor")["recommendation"])
        self.assertIn("--cores 4", self.find(fs, "smt")["recommendation"])
        nic = self.find(fs, "nic irq", "WARN")
        self.assertIn("/proc/irq/$i/smp_affinity_list", nic["recommendation"])
        self.assertIn("6-7", nic["recommendation"])
        self.assertIn("irqbalance", nic["recommendation"])

    def test_every_cpu_a_shard_on_big_host_warns(self):
        files, links = healthy()
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data")  # default: 8 shards
        self.assertEqual(code, 0)
        self.assertEqual(self.levels(fs, "cpu"), ["WARN"])
        self.assertIn("--cores 7", self.find(fs, "cpu")["recommendation"])

    def test_more_shards_than_cpus_warns(self):
        files, links = healthy()
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "12")
        self.assertIn("WARN", self.levels(fs, "cpu"))

    def test_affinity_not_starting_at_zero_warns(self):
        files, links = healthy()
        files["proc/self/status"] = status(cpus="2-7")
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "4")
        self.assertEqual(self.levels(fs, "cpu affinity"), ["WARN"])

    def test_isolated_cpus_not_covering_shards_warn(self):
        files, links = healthy()
        files["sys/devices/system/cpu/isolated"] = "4-7\n"
        files["proc/cmdline"] += "isolcpus=4-7\n"
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertEqual(self.levels(fs, "isolation"), ["WARN"])

    def test_io_uring_disabled_1_root_or_group_warns(self):
        files, links = healthy()
        files["proc/sys/kernel/io_uring_disabled"] = "1\n"
        files["proc/sys/kernel/io_uring_group"] = "990\n"
        files["proc/self/status"] = status(uid=0, gid=0, groups="0")
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertEqual((code, self.levels(fs, "io_uring")), (0, ["WARN"]))
        files["proc/self/status"] = status(uid=1000, gid=1000, groups="1000 990")
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertEqual((code, self.levels(fs, "io_uring")), (0, ["WARN"]))

    def test_memlock_low_as_root_warns(self):
        files, links = healthy()
        files["proc/self/limits"] = limits(memlock_soft=65536, memlock_hard=65536)
        files["proc/self/status"] = status(uid=0, gid=0, groups="0")
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertEqual((code, self.levels(fs, "memlock")), (0, ["WARN"]))

    def test_seccomp_warns(self):
        files, links = healthy()
        files["proc/self/status"] = status(seccomp=2)
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6")
        self.assertIn("WARN", self.levels(fs, "io_uring"))

    # -------------------------------------------------------------- CRIT

    def assert_crit(self, files, links, area, *args):
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/srv/strom/data", "--cores", "6", *args)
        self.assertEqual(code, 1)
        self.assertIn("CRIT", self.levels(fs, area), fs)
        _, out, _ = self.run_check(root, "--data-dir", "/srv/strom/data", "--cores", "6", *args)
        self.assertTrue(any(l.startswith("CRIT  %s:" % area) for l in out.splitlines()), out)
        return fs

    def test_io_uring_disabled_2_is_critical(self):
        files, links = healthy()
        files["proc/sys/kernel/io_uring_disabled"] = "2\n"
        self.assert_crit(files, links, "io_uring")

    def test_io_uring_disabled_1_unprivileged_is_critical(self):
        files, links = healthy()
        files["proc/sys/kernel/io_uring_disabled"] = "1\n"
        files["proc/sys/kernel/io_uring_group"] = "990\n"
        self.assert_crit(files, links, "io_uring")

    def test_old_kernel_is_critical(self):
        files, links = healthy()
        files["proc/sys/kernel/osrelease"] = "5.4.0-150-generic\n"
        self.assert_crit(files, links, "kernel")

    def test_memlock_too_low_is_critical(self):
        files, links = healthy()
        files["proc/self/limits"] = limits(memlock_soft=65536, memlock_hard=65536)
        fs = self.assert_crit(files, links, "memlock")
        f = self.find(fs, "memlock", "CRIT")
        self.assertIn("18 MiB", f["found"])  # 6 x (2 MiB + 1 MiB)
        self.assertIn("LimitMEMLOCK=infinity", f["recommendation"])

    def test_tmpfs_data_dir_is_critical(self):
        files, links = healthy()
        root = self.build(files, links)
        code, fs = self.findings(root, "--data-dir", "/dev/shm/strom", "--cores", "6")
        self.assertEqual(code, 1)
        self.assertEqual(self.levels(fs, "filesystem"), ["CRIT"])

    def test_overlay_data_dir_is_critical(self):
        files, links = healthy()
        files["proc/self/mountinfo"] = "27 1 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b\n"
        self.assert_crit(files, links, "filesystem")

    def test_large_logical_block_is_critical(self):
        files, links = healthy()
        files["sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/queue/logical_block_size"] = "8192\n"
        self.assert_crit(files, links, "alignment")

    def test_read_only_mount_is_critical(self):
        files, links = healthy()
        files["proc/self/mountinfo"] = files["proc/self/mountinfo"].replace(
            "/srv/strom rw,noatime", "/srv/strom ro,noatime")
        self.assert_crit(files, links, "mount options")

    # ------------------------------------------------------------- usage

    def test_usage_errors_exit_2(self):
        files, links = healthy()
        root = self.build(files, links)
        for args in (["--cores", "0"], ["--cores", "x"], ["--bogus"],
                     ["--root", os.path.join(self.tmp, "nope")]):
            p = subprocess.run([sys.executable, CHECK, "--root", root] + args,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn("usage", p.stderr)

    def test_live_host_runs(self):
        """The real machine: must not crash, whatever it finds."""
        p = subprocess.run([sys.executable, CHECK, "--json", "--no-probe", "--data-dir", self.tmp],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.assertIn(p.returncode, (0, 1), p.stderr)
        self.assertTrue(json.loads(p.stdout)["findings"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
