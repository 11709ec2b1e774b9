"""The `gateway` fixture on either target: boots, polls every device, answers on its REPL."""
import re


def test_gateway_boots_and_polls(gateway, report):
    report(scenario="steady (gateway fixture)", fault="-")
    # the boot line came before the REPL prompt the start waited for: search all output
    m = re.search(r"edgegw: config from (\S+), (\d+) devices on (\d+) buses", gateway.output)
    assert m, gateway.output[-2000:]
    s = gateway.wait(lambda s: all(s["buses"][b][d]["ok"] >= 2 for b in s["buses"]
                                   for d in s["buses"][b] if not d.startswith("_")), 30,
                     points=False)
    truth = gateway.sim.summary()
    assert abs(s["site"]["pv_w"] - truth["pv_w"]) <= 50
    assert gateway.exec("print(6 * 7)").strip() == "42"
    report.figure("%s devices on %s buses polled, heap %d B in use" % (
        m.group(2), m.group(3),
        s["heap"]["alloc"]))
