"""Unit tests of ci/vm/timeline.py (ci/vm-bench --trace): trace parsing and the per-I/O
timeline, on a synthetic QEMU 7.2 trace (`-msg timestamp=on` log backend format)."""

import unittest

import timeline

# Two QD 1 I/Os in interrupt mode on queue 1, with admin traffic (queue 0) in between that
# must be ignored. Times in microseconds after second 100.
TRACE = """\
900@100.000000:pci_nvme_mmio_doorbell_sq sqid 1 new_tail 1
901@100.000010:pci_nvme_io_cmd cid 0 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'
901@100.000012:pci_nvme_read cid 0 nsid 1 nlb 8 count 4096 lba 0x10
900@100.000013:pci_nvme_mmio_doorbell_sq sqid 0 new_tail 5
901@100.000014:pci_nvme_admin_cmd cid 9 sqid 0 opc 0x6 opname 'NVME_ADM_CMD_IDENTIFY'
901@100.000015:pci_nvme_enqueue_req_completion cid 9 cqid 0 dw0 0x0 dw1 0x0 status 0x0
901@100.000016:pci_nvme_irq_msix raising MSI-X IRQ vector 0
901@100.000020:pci_nvme_rw_cb cid 0 blk 'ctrl04n1'
901@100.000021:pci_nvme_enqueue_req_completion cid 0 cqid 1 dw0 0x0 dw1 0x0 status 0x0
901@100.000030:pci_nvme_irq_msix raising MSI-X IRQ vector 1
900@100.000050:pci_nvme_mmio_doorbell_cq cqid 1 new_head 1
900@100.000055:pci_nvme_mmio_doorbell_sq sqid 1 new_tail 0
901@100.000060:pci_nvme_io_cmd cid 1 nsid 0x1 sqid 1 opc 0x2 opname 'NVME_NVM_CMD_READ'
901@100.000070:pci_nvme_rw_cb cid 1 blk 'ctrl04n1'
901@100.000071:pci_nvme_enqueue_req_completion cid 1 cqid 1 dw0 0x0 dw1 0x0 status 0x0
901@100.000080:pci_nvme_irq_msix raising MSI-X IRQ vector 1
900@100.000100:pci_nvme_mmio_doorbell_cq cqid 1 new_head 0
900@100.000105:pci_nvme_mmio_doorbell_sq sqid 1 new_tail 1
not a trace line
"""


class Timeline(unittest.TestCase):
    def test_parse(self):
        ev = timeline.parse_trace(TRACE)
        self.assertEqual(len(ev), 18)
        self.assertEqual((ev[0].tid, ev[0].name, ev[0].qid), (900, "mmio_doorbell_sq", 1))
        self.assertAlmostEqual(ev[1].t, 100.00001)

    def test_two_ios_step_by_step(self):
        ios = timeline.timeline(timeline.parse_trace(TRACE))
        self.assertEqual(len(ios), 2)  # the third doorbell starts an I/O that never completes
        us = lambda a, b: round((b - a) * 1e6)
        first = ios[0]
        self.assertEqual(us(first.doorbell, first.cmd), 10)
        self.assertEqual(us(first.cmd, first.blk), 10)
        self.assertEqual(us(first.blk, first.queued), 1)
        self.assertEqual(us(first.queued, first.irq), 9)  # the admin vector 0 is not it
        self.assertEqual(us(first.irq, first.reap), 20)
        self.assertEqual(us(first.reap, first.next_doorbell), 5)
        rows = {label.split(" (")[0]: (round(med, 3), n) for label, med, _, n in timeline.step_rows(ios)}
        self.assertEqual(rows["period: SQ doorbell -> next SQ doorbell"], (52.5, 2))
        self.assertAlmostEqual(rows["SQ doorbell -> command fetched"][0], 7.5)  # 10 and 5
        self.assertNotIn("completion queued -> guest's first doorbell", rows)

    def test_poll_mode_without_cq_doorbell_reaps_at_the_next_submit(self):
        text = "\n".join(l for l in TRACE.splitlines() if "irq_msix" not in l and "doorbell_cq" not in l)
        ios = timeline.timeline(timeline.parse_trace(text))
        self.assertEqual(len(ios), 2)
        self.assertIsNone(ios[0].irq)
        self.assertEqual(ios[0].reap, ios[0].next_doorbell)
        labels = [r[0] for r in timeline.step_rows(ios)]
        self.assertFalse(any("MSI-X sent ->" in l for l in labels))
        lines = timeline.report("poll", ios, None)
        self.assertIn("doorbell -> cmd -> blk -> queued -> reap -> next_doorbell", lines[-1])


if __name__ == "__main__":
    unittest.main()
