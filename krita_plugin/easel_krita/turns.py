"""UI-thread work cut into event-loop turns (pure: no Krita, no Qt; ``session`` drives it with a timer).

A piece of work is what a generator runs between two yields. Krita repaints and takes strokes only
between turns, so a turn holds about ``budget`` seconds of pieces; a piece after ``yield ALONE`` (a
Krita call that waits for a whole-canvas recomposite) starts a turn and ends it, so such a wait never
adds to other work in one UI-thread block.
"""

from __future__ import annotations

import time

ALONE = object()


class Turns:
    def __init__(self, steps, budget: float, clock=time.perf_counter):
        self.steps, self.budget, self.clock = steps, budget, clock
        self.done, self.value = False, None
        self._heavy = False  # the last yield was ALONE
        self._started = False

    def turn(self) -> float:
        """Run one turn of pieces and return its seconds; ``done``/``value`` once the generator has
        returned. The generator's exceptions pass through."""
        start = self.clock()
        worked = False
        try:
            while True:
                if self._heavy and worked:
                    break
                alone = self._heavy
                self._heavy = next(self.steps) is ALONE
                worked = worked or self._started  # the first piece only runs up to the first yield
                self._started = True
                if alone or self.clock() - start >= self.budget:
                    break
        except StopIteration as stop:
            self.done, self.value = True, stop.value
        return self.clock() - start
