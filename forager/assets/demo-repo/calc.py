"""Small arithmetic helpers: the repository of Forager's learning demo (configs/train/cpu-demo.yaml)."""


def total(price, tax):
    return price + tax


def area(width, height):
    return width * height


def half(value):
    return value / 2


def power(base, exp):
    return base ** exp


def mean(values):
    return sum(values) / len(values)
