{#- Raw amounts are integer cents; marts report dollars as exact decimals. -#}
{% macro cents_to_dollars(column, scale=2) -%}
    cast({{ column }} / 100 as decimal(18, {{ scale }}))
{%- endmacro %}
