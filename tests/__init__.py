"""fastexpr test suite."""
