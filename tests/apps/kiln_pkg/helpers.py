def describe(values: list[int]) -> str:
    return "pkg-values:" + ",".join(str(v) for v in values)
