# The real Seplos V3 capture (../shared/reference/traces/seplos-v3-SG16S200A-all-frames.txt,
# Apache-2.0, from the esphome-seplos-bms project) imported, paired and decoded with the
# seplos_v3 map. The capture is vendored in tests/data/traces so a fresh clone needs nothing
# outside the repo.
import io
import os

from protocols import regmap, trace

REF = os.path.join(os.path.dirname(__file__), "..", "data", "traces",
                   "seplos-v3-SG16S200A-all-frames.txt")
with open(REF) as _f:
    CAPTURE = _f.read()


def test_capture_decodes_with_the_seplos_map():
    recs = trace.import_dotted(CAPTURE.split("\n"), bus="bms", baud=19200)
    assert len(recs) == 44 and all(r["flags"] == [] for r in recs)
    m = regmap.load("seplos_v3")
    blocks = []
    exceptions = []
    for req, rsp, rq, rs, err in trace.transactions(recs):
        assert rsp is not None
        if rsp.exc:
            exceptions.append((rsp.slave, rsp.fc, rsp.exc, trace.data(rs).hex()))
            continue
        assert err is None and req is not None
        v = regmap.decode(m, req.fc, req.addr, rsp.values) if req.slave == 1 else {}
        if "soc_cpct" in v:
            blocks.append(v)
    assert len(blocks) == 2
    for v in blocks:
        assert v["soc_cpct"] == 8320  # 83.2 %
        assert v["v_cv"] in (5325, 5324)  # 53.25 V (the second poll reads 53.24 V)
        assert v["i_ca"] == -137  # -1.37 A, discharging
        assert v["ccl_ca"] == 18000 and v["dcl_ca"] == 18000  # 180 A
        assert v["soh_cpct"] == 9990 and v["cycles"] == 10
        assert 3300 < v["cell_min_mv"] <= v["cell_max_mv"] < 3400
        assert 2000 < v["t_min_cdc"] <= v["t_max_cdc"] < 2300  # 0.01 degC, exact
    assert blocks[0]["v_cv"] == 5325
    # 00.84.02.93.01 (FC04 illegal address, twice), 00.81.02.90.51, 01.81.02.C1.91
    assert exceptions.count((0, 4, 2, "0084029301")) == 2
    assert exceptions.count((0, 1, 2, "0081029051")) == 2
    assert exceptions.count((1, 1, 2, "018102c191")) == 2
    assert len(exceptions) == 6


def test_capture_survives_the_trace_format():
    recs = trace.import_dotted(CAPTURE.split("\n"), bus="bms", baud=19200)
    f = io.StringIO()
    w = trace.Writer(f, {"baud": 19200, "source": "seplos-v3-SG16S200A-all-frames.txt"})
    for r in recs:
        w.write(r)
    h, it = trace.read(io.StringIO(f.getvalue()))
    assert h["source"].startswith("seplos") and list(it) == recs
