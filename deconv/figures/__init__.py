"""The pictures: drawing primitives, the Fig. 2 sheet, Figs. 4 and 7, and the static HTML report."""
