"""``python bundle/deploy_app -i <dicom folder> -o <output folder> -m <checkpoint>`` (see app.py)."""

from app import SDMADApp

if __name__ == "__main__":
    SDMADApp().run()
