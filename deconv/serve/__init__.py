"""``deconv serve``: probe any activation of any image live in the browser.

:mod:`.session` computes (images, cached forward results, feature maps, projections), :mod:`.pictures`
draws them with deconv's renderer, :mod:`.records` reads a top9 run, :mod:`.app` wires them to HTTP
(it needs the ``serve`` extra: starlette and uvicorn) and ``page.html`` is the page.
"""
