{#- One row per day, `date_day`, from the earliest to the latest value of two columns of `relation`. -#}
{% macro date_spine(relation, start_column, end_column) -%}
    select cast(unnest(generate_series(
        cast(min({{ start_column }}) as date),
        cast(max({{ end_column }}) as date),
        interval 1 day
    )) as date) as date_day
    from {{ relation }}
{%- endmacro %}
