"""The bottom layer: input checks, constants and backend choice, each defined once, and the loading
of the compiled library.  Nothing here imports from the rest of the package."""
