"""Wire and API types: one module per boundary, all msgspec Structs."""
