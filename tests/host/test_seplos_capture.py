# The real Seplos V3 capture (../shared/reference/traces/seplos-v3-SG16S200A-all-frames.txt,
# Apache-2.0, from the esphome-seplos-bms project) imported, paired and decoded with the
# seplos_v3 map. The capture is embedded so a fresh clone needs nothing outside the repo;
# when the shared copy exists it must match.
import io
import os

from protocols import regmap, trace

REF = os.path.join(os.path.dirname(__file__), "..", "data", "traces",
                   "seplos-v3-SG16S200A-all-frames.txt")

CAPTURE = """\
>>> 00.04.20.00.00.1A.7B.D0
<<< 00.04.34.14.CD.00.00.FF.F3.FF.FF.6B.40.00.00.80.E8.00.00.01.22.00.00.80.E8.00.00.00.01.00.00.00.00.00.00.07.08.00.00.07.08.00.00.02.40.01.D0.00.01.00.0A.03.40.03.E7.F2.CC

>>> 00.04.21.00.00.1A.7A.2C
<<< 00.84.02.93.01

>>> 00.01.22.00.00.50.37.9F
<<< 00.01.0A.01.00.00.00.00.00.00.43.00.00.7F.E1

>>> 00.04.17.00.00.33.B4.7A
<<< 00.04.66.58.5A.48.2D.45.6C.65.63.54.65.63.68.20.43.6F.2E.2C.4C.74.64.53.47.31.36.53.32.30.30.41.2D.53.50.35.37.42.2D.41.00.00.00.31.35.53.50.35.37.42.2D.41.32.35.30.36.31.32.30.30.32.32.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.63.4B

>>> 00.04.18.00.00.24.F7.60
<<< 00.04.48.00.00.01.F4.53.55.4E.2D.33.2E.36.4B.2D.53.47.30.33.50.31.2D.45.55.00.00.00.00.00.00.00.00.00.00.00.00.00.00.50.79.6C.6F.6E.20.43.41.4E.20.50.72.6F.74.6F.63.6F.6C.00.00.00.00.00.00.00.00.00.00.00.00.00.00.32.30.00.00.41.29

>>> 00.01.14.00.05.00.3B.7B
<<< 00.81.02.90.51

>>> E0.04.13.00.00.35.23.28
<<< E0.04.6A.00.04.00.10.15.18.15.E0.15.18.16.80.12.C0.12.20.12.C0.10.E0.0D.48.0D.AC.0D.48.0E.42.0C.1C.0B.54.0C.1C.0A.8C.07.D0.03.E8.01.F4.00.CB.00.CD.00.D2.00.64.01.2C.01.2C.FF.35.FF.33.FF.2E.00.64.FE.A2.01.2C.FE.D4.00.6A.02.58.00.05.0B.B8.00.CD.00.0A.0D.AC.0D.48.05.DC.03.E8.03.20.00.C8.00.1E.0C.81.0C.9F.0C.9F.0C.D1.0A.DD.0A.C9.76.16

>>> E0.04.13.35.00.35.33.26
<<< E0.04.6A.0A.BF.0A.AB.0C.9F.0C.D1.0C.D1.0D.03.0A.C9.0A.AB.0A.B5.0A.8D.0C.81.0C.9F.0C.D1.0D.03.0A.C9.0A.AB.0A.AB.0A.47.0D.FD.0E.61.0D.FD.0E.F7.0B.0F.0A.AB.0C.9F.0A.AB.00.0A.0D.48.00.32.00.1E.03.C0.00.50.00.32.00.32.00.1E.80.E8.80.E8.6B.40.00.30.00.3C.00.F0.00.0A.00.07.00.00.00.0D.00.00.01.F4.01.2C.16.80.00.B4.FF.4C.00.00.00.08.FE.C9

>>> 01.04.10.00.00.11.34.C6
<<< 01.04.22.14.CD.FF.77.6B.40.80.E8.01.22.03.40.03.E7.00.0A.0C.FF.0B.7F.0D.00.0C.FF.0B.81.0B.7E.00.00.00.B4.00.B4.D3.2E

>>> 01.04.11.00.00.1A.74.FD
<<< 01.04.34.0C.FF.0C.FF.0D.00.0D.00.0D.00.0C.FF.0D.00.0C.FF.0D.00.0D.00.0D.00.0D.00.0D.00.0C.FF.0C.FF.0D.00.0B.82.0B.7F.0B.81.0B.7E.0A.AB.0A.AB.0A.AB.0A.AB.0B.8C.0B.7F.01.13

>>> 01.01.12.00.09.00.3F.22
<<< 01.81.02.C1.91

>>> 00.04.20.00.00.1A.7B.D0
<<< 00.04.34.14.CC.00.00.FF.F3.FF.FF.6B.40.00.00.80.E8.00.00.01.22.00.00.80.E8.00.00.00.01.00.00.00.00.00.00.07.08.00.00.07.08.00.00.02.40.01.D0.00.01.00.0A.03.40.03.E7.2E.41

>>> 00.04.21.00.00.1A.7A.2C
<<< 00.84.02.93.01

>>> 00.01.22.00.00.50.37.9F
<<< 00.01.0A.01.00.00.00.00.00.00.43.00.00.7F.E1

>>> 00.04.17.00.00.33.B4.7A
<<< 00.04.66.58.5A.48.2D.45.6C.65.63.54.65.63.68.20.43.6F.2E.2C.4C.74.64.53.47.31.36.53.32.30.30.41.2D.53.50.35.37.42.2D.41.00.00.00.31.35.53.50.35.37.42.2D.41.32.35.30.36.31.32.30.30.32.32.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.00.63.4B

>>> 00.04.18.00.00.24.F7.60
<<< 00.04.48.00.00.01.F4.53.55.4E.2D.33.2E.36.4B.2D.53.47.30.33.50.31.2D.45.55.00.00.00.00.00.00.00.00.00.00.00.00.00.00.50.79.6C.6F.6E.20.43.41.4E.20.50.72.6F.74.6F.63.6F.6C.00.00.00.00.00.00.00.00.00.00.00.00.00.00.32.30.00.00.41.29

>>> 00.01.14.00.05.00.3B.7B
<<< 00.81.02.90.51

>>> E0.04.13.00.00.35.23.28
<<< E0.04.6A.00.04.00.10.15.18.15.E0.15.18.16.80.12.C0.12.20.12.C0.10.E0.0D.48.0D.AC.0D.48.0E.42.0C.1C.0B.54.0C.1C.0A.8C.07.D0.03.E8.01.F4.00.CB.00.CD.00.D2.00.64.01.2C.01.2C.FF.35.FF.33.FF.2E.00.64.FE.A2.01.2C.FE.D4.00.6A.02.58.00.05.0B.B8.00.CD.00.0A.0D.AC.0D.48.05.DC.03.E8.03.20.00.C8.00.1E.0C.81.0C.9F.0C.9F.0C.D1.0A.DD.0A.C9.76.16

>>> E0.04.13.35.00.35.33.26
<<< E0.04.6A.0A.BF.0A.AB.0C.9F.0C.D1.0C.D1.0D.03.0A.C9.0A.AB.0A.B5.0A.8D.0C.81.0C.9F.0C.D1.0D.03.0A.C9.0A.AB.0A.AB.0A.47.0D.FD.0E.61.0D.FD.0E.F7.0B.0F.0A.AB.0C.9F.0A.AB.00.0A.0D.48.00.32.00.1E.03.C0.00.50.00.32.00.32.00.1E.80.E8.80.E8.6B.40.00.30.00.3C.00.F0.00.0A.00.07.00.00.00.0D.00.00.01.F4.01.2C.16.80.00.B4.FF.4C.00.00.00.08.FE.C9

>>> 01.04.10.00.00.11.34.C6
<<< 01.04.22.14.CC.FF.77.6B.40.80.E8.01.22.03.40.03.E7.00.0A.0C.FF.0B.80.0D.00.0C.FF.0B.82.0B.7E.00.00.00.B4.00.B4.15.5E

>>> 01.04.11.00.00.1A.74.FD
<<< 01.04.34.0C.FF.0C.FF.0C.FF.0D.00.0D.00.0D.00.0C.FF.0D.00.0C.FF.0D.00.0D.00.0D.00.0C.FF.0D.00.0C.FF.0D.00.0B.82.0B.7F.0B.81.0B.7D.0A.AB.0A.AB.0A.AB.0A.AB.0B.8C.0B.7F.83.77

>>> 01.01.12.00.09.00.3F.22
<<< 01.81.02.C1.91
"""


def test_embedded_capture_matches_reference():
    if os.path.exists(REF):
        with open(REF) as f:
            assert f.read() == CAPTURE


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
        assert 200 < v["t_min_dc"] <= v["t_max_dc"] < 230
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
