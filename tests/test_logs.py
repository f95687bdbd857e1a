from voicebridge.logs import mask_number, mask_parameters, printable


def test_masks_numbers_keeping_country_code_and_last_digits():
    assert mask_number("+15551234567") == "+1555*****67"
    assert mask_number("+15551234567", show=True) == "+15551234567"
    assert mask_number("client:alice") == "**********ce"
    assert mask_number("") == ""


def test_masks_number_parameters_only():
    assert mask_parameters({"to": "+15551234567", "plan": "pro"}) == {"to": "+1555*****67", "plan": "pro"}


def test_printable_escapes_control_characters_and_bounds_length():
    assert printable("a\r\nb") == "a\\r\\nb"
    assert printable("x" * 500, 10) == "x" * 10 + "..."
    assert printable(None) == "-"
