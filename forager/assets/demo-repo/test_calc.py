from calc import area, half, mean, power, total


def test_total():
    assert total(10, 3) == 13


def test_area():
    assert area(3, 4) == 12


def test_half():
    assert half(5) == 2.5


def test_power():
    assert power(2, 3) == 8


def test_mean():
    assert mean([1, 2, 4]) == 7 / 3
