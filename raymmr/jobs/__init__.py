"""The jobs behind the `raymmr` command (and `python jobs/<job>.py` in a checkout): each module's
``main(argv)`` parses its flags and calls one function of the library."""
