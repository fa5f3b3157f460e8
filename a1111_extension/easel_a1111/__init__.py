"""The Easel tab for the AUTOMATIC1111 WebUI (and Forge).

``params`` (tab values -> Easel requests) and ``protocol`` are free of gradio; ``compat`` hides the
gradio 3 / gradio 4 component differences; ``tab`` builds the UI; ``webui`` is the only module that
touches the WebUI's ``modules`` package.
"""
