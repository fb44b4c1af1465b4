"""`hemato report`: one self-contained, printable HTML report of a results CSV."""
