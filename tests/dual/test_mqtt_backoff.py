# The MQTT client's reconnect wait (edgefw/mqtt.py backoff_ms): doubling from the minimum to
# the maximum, half fixed and half random, every intermediate a small int on 32-bit (the
# old two-byte jitter multiplied 65535 by up to 30000: a long int on the board).
from edgefw.mqtt import backoff_ms


def test_doubles_to_the_cap_with_half_fixed_half_random():
    for attempt, full in ((1, 1000), (2, 2000), (3, 4000), (6, 32000), (7, 60000), (40, 60000)):
        assert backoff_ms(attempt, 1000, 60000, 0) == full // 2
        assert backoff_ms(attempt, 1000, 60000, 128) == full // 2 + full // 4
        assert full - full // 256 - 1 <= backoff_ms(attempt, 1000, 60000, 255) <= full


def test_the_largest_configurable_wait_stays_in_small_ints():
    hi = 3600000  # link.backoff_max_ms's upper bound
    assert 255 * (hi - hi // 2) < (1 << 30)
    assert backoff_ms(30, 1000, hi, 255) == hi // 2 + 255 * (hi // 2) // 256
