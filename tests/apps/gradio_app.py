"""A Gradio UI mounted on FastAPI, served by `@modal.asgi_app` (as in Modal's Gradio examples).

Gradio's page and its frontend assets come from the gradio package itself; analytics are off, so
nothing needs the internet."""

import modal

image = modal.Image.debian_slim().pip_install("gradio==6.31.0").env({"GRADIO_ANALYTICS_ENABLED": "False"})
app = modal.App("kiln-test-gradio", image=image)


@app.function(max_containers=1)  # Gradio keeps its sessions in memory: one container
@modal.concurrent(max_inputs=100)
@modal.asgi_app()
def ui():
    import gradio as gr
    from fastapi import FastAPI

    def greet(name: str) -> str:
        return f"Hello, {name}!"

    demo = gr.Interface(
        fn=greet,
        inputs=gr.Textbox(label="Name of the kiln user"),
        outputs=gr.Textbox(label="Greeting from kiln"),
        title="Kiln Gradio demo",
    )
    return gr.mount_gradio_app(FastAPI(), demo, path="/")
