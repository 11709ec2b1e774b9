"""`edgegw flash`: put a MicroPython image on an ESP32-class gateway with esptool's Python API.

Steps (the plan): detect the chip, erase the flash, write the image at the chip family's
offset (ESP32 0x1000, S2/S3/C3/C6 0x0), verify, hard reset. `--dry-run` prints the plan as
the exact esptool command lines without touching a port."""
import json
import shlex

import click

from edgegw.cli import UserError

# MicroPython's combined .bin starts with the 2nd-stage bootloader: where that goes per family
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x0, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
# chip id in the image's extended header (byte 12-13, esptool IMAGE_CHIP_ID)
IMAGE_CHIP_IDS = {0: "esp32", 2: "esp32s2", 9: "esp32s3", 5: "esp32c3", 13: "esp32c6"}
CHIPS = ("auto",) + tuple(OFFSETS)
ESP_IMAGE_MAGIC = 0xE9


def image_chip(path):
    """The chip family an image was built for (from its header), or None if it has no
    ESP image header (then the board's detected chip decides)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise UserError("IMAGE %s: cannot read (%s)" % (path, e.strerror))
    if len(head) < 16 or head[0] != ESP_IMAGE_MAGIC:
        return None
    cid = head[12] | (head[13] << 8)
    return IMAGE_CHIP_IDS.get(cid, "unknown-%d" % cid)


def plan(image, chip, port, baud, erase=True, verify=True):
    """The steps as (name, esptool argv) pairs. chip 'auto' keeps esptool's detection and
    takes the offset from the image header; an image without a header needs --chip."""
    img_chip = image_chip(image)
    if img_chip is not None and img_chip.startswith("unknown"):
        raise UserError("IMAGE %s: built for an unsupported chip (%s); supported: %s"
                        % (image, img_chip, ", ".join(OFFSETS)))
    if chip == "auto":
        if img_chip is None:
            raise UserError("IMAGE %s has no ESP image header: give --chip (one of %s)"
                            % (image, ", ".join(OFFSETS)))
        family = img_chip
    else:
        family = chip
        if img_chip is not None and img_chip != chip:
            raise UserError("--chip %s but IMAGE %s was built for %s: use the %s image"
                            % (chip, image, img_chip, chip))
    off = OFFSETS[family]
    # the image's family goes on the command line: esptool then refuses a different board
    base = ["esptool", "--chip", family, "--port", port, "--baud", str(baud)]
    steps = [("detect", base + ["chip-id"])]
    if erase:
        steps.append(("erase", base + ["erase-flash"]))
    steps.append(("write", base + ["write-flash", "0x%x" % off, image]))
    if verify:
        steps.append(("verify", base + ["verify-flash", "0x%x" % off, image]))
    steps.append(("reset", base + ["--after", "hard-reset", "run"]))
    return {"chip": family, "offset": off, "image": image, "steps": steps}


class _ClickLogger:
    """esptool logger that draws its progress through click (one bar per stage)."""

    def __init__(self):
        from esptool.logger import TemplateLogger

        outer = self

        class L(TemplateLogger):
            def print(self, *a, **k):
                k.pop("flush", None)
                k.pop("soft_wrap", None)
                end = k.get("end", "\n")
                click.echo(" ".join(str(x) for x in a) + end, nl=False, err=True)

            def note(self, m):
                click.echo("Note: " + m, err=True)

            def warning(self, m):
                click.echo("Warning: " + m, err=True)

            def error(self, m):
                click.echo("Error: " + m, err=True)

            def stage(self, finish=False):
                pass

            def progress_bar(self, cur, total, prefix="", suffix="", bar_length=30):
                outer.progress(cur, total, prefix)

            def set_verbosity(self, v):
                pass

        self.logger = L()
        self.bar = None
        self.done = 0

    def progress(self, cur, total, label):
        if self.bar is None or cur < self.done:
            self.close()
            self.bar = click.progressbar(length=max(total, 1), label=(label or "").strip()[:30],
                                         file=click.get_text_stream("stderr"))
            self.bar.__enter__()
            self.done = 0
        self.bar.update(cur - self.done)
        self.done = cur
        if cur >= total:
            self.close()

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def run(p, port, baud, erase=True, verify=True, echo=click.echo):
    """Carry out a plan on a board in its ROM bootloader."""
    try:
        import esptool
        from esptool import cmds
        from esptool.logger import log
    except ImportError as e:  # pragma: no cover - esptool is a dependency
        raise UserError("esptool is not installed (%s): pip install esptool" % e)
    cl = _ClickLogger()
    log.set_logger(cl.logger)
    img = p["image"]
    try:
        esp = cmds.detect_chip(port, esptool.ESPLoader.ESP_ROM_BAUD)
    except Exception as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError("--port %s: no ESP ROM bootloader answered (%s). Hold BOOT while "
                        "pressing RESET, check the cable, or pass the right --port" % (port, why))
    try:
        chip = esp.CHIP_NAME.lower().replace("-", "")
        if chip != p["chip"]:
            raise UserError("board on %s is %s but the image is for %s: use the %s image"
                            % (port, esp.CHIP_NAME, p["chip"], esp.CHIP_NAME))
        echo("chip %s, writing %s at 0x%x" % (esp.CHIP_NAME, img, p["offset"]))
        esp = cmds.run_stub(esp)
        if baud != esptool.ESPLoader.ESP_ROM_BAUD:
            esp.change_baud(baud)
        cmds.attach_flash(esp)
        if erase:
            echo("erasing flash ...")
            cmds.erase_flash(esp)
        cmds.write_flash(esp, [(p["offset"], img)])
        if verify:
            cmds.verify_flash(esp, [(p["offset"], img)])
            echo("verified")
        cmds.reset_chip(esp, "hard-reset")
    except UserError:
        raise
    except Exception as e:
        raise UserError("flashing failed: %s. Put the board in its bootloader and retry "
                        "(try a lower --baud)" % e)
    finally:
        cl.close()
        try:
            esp._port.close()
        except OSError:      # the port went away with the failure being reported
            pass


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--port", "-p", default="/dev/ttyUSB0", show_default=True,
              help="Serial port of the board (any pyserial URL, e.g. rfc2217://host:4000).")
@click.option("--baud", "-b", default=460800, show_default=True, type=click.IntRange(9600, 4000000),
              help="Baud rate for writing (detection runs at the ROM's 115200).")
@click.option("--chip", type=click.Choice(CHIPS), default="auto", show_default=True,
              help="Chip family; auto = detect the board, offset from the image header.")
@click.option("--no-erase", is_flag=True, help="Skip the full erase (keeps the filesystem).")
@click.option("--no-verify", is_flag=True, help="Skip reading back the image.")
@click.option("--dry-run", is_flag=True, help="Print the exact esptool steps, touch nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (with --dry-run).")
def cli(image, port, baud, chip, no_erase, no_verify, dry_run, as_json):
    """Flash a MicroPython IMAGE (.bin) to an ESP32 / S2 / S3 / C3 / C6 gateway.

    \b
    edgegw flash ESP32_GENERIC-v1.29.bin --port /dev/ttyUSB0
    edgegw flash fw.bin --chip esp32s3 --dry-run
    """
    p = plan(image, chip, port, baud, not no_erase, not no_verify)
    if dry_run:
        if as_json:
            click.echo(json.dumps({"chip": p["chip"], "offset": p["offset"], "image": image,
                                   "steps": [{"step": n, "argv": a} for n, a in p["steps"]]},
                                  indent=2))
        else:
            click.echo("# %s image, offset 0x%x" % (p["chip"], p["offset"]))
            for name, argv in p["steps"]:
                click.echo("%-7s %s" % (name, shlex.join(argv)))
        return
    run(p, port, baud, not no_erase, not no_verify)
