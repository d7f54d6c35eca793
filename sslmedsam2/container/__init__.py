"""The challenge container's job: input layouts, the per-case time budget, inference from /input
to /output, and checking a weights folder before shipping it."""
