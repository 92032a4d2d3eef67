"""``hafloatd lab`` on a real cluster: drills, their phase breakdown, the report and the SVG."""
