"""The municipalities of the regional deployment (CBS codes, 2026 classification)."""

DRENTHE: dict[str, str] = {
    "GM0106": "Assen",
    "GM0109": "Coevorden",
    "GM0114": "Emmen",
    "GM0118": "Hoogeveen",
    "GM0119": "Meppel",
    "GM1680": "Aa en Hunze",
    "GM1681": "Borger-Odoorn",
    "GM1690": "De Wolden",
    "GM1699": "Noordenveld",
    "GM1701": "Westerveld",
    "GM1730": "Tynaarlo",
    "GM1731": "Midden-Drenthe",
}
