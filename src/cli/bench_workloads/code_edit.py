import math
from dataclasses import dataclass


@dataclass
class Vector:
    x: float
    y: float
    z: float

    def __add__(self, other: "Vector") -> "Vector":
        """Adds two vectors component by component."""
        return Vector(self.x + other.x, self.y + other.y, self.z + other.z)

    def __sub__(self, other: "Vector") -> "Vector":
        """Subtracts two vectors component by component."""
        return Vector(self.x - other.x, self.y - other.y, self.z - other.z)

    def __mul__(self, other: "Vector") -> "Vector":
        """Multiplies two vectors component by component."""
        return Vector(self.x * other.x, self.y * other.y, self.z * other.z)

    def __truediv__(self, other: "Vector") -> "Vector":
        """Divides two vectors component by component."""
        return Vector(self.x / other.x, self.y / other.y, self.z / other.z)

    def scaled(self, factor: float) -> "Vector":
        """Multiplies every component by a factor."""
        return Vector(self.x * factor, self.y * factor, self.z * factor)

    def length(self) -> float:
        """The Euclidean length of the vector."""
        return math.sqrt(self.x * self.x + self.y * self.y + self.z * self.z)

    def dot(self, other: "Vector") -> float:
        """The dot product of two vectors."""
        return self.x * other.x + self.y * other.y + self.z * other.z

    def __floordiv__(self, other: "Vector") -> "Vector":
